"""The PyTorch side of the benchmark: torchvision ResNet50 + pytorch-metric-learning doing the work of
triplet_keras' merge model and online model.

The encoder matches ``triplet_keras.models.networks.build_encoder(weights=None)``: raw 0..255 RGB in
(B, H, W, 3), ImageNet normalisation, ResNet50 with average pooling, a 128-d linear head, L2
normalisation; the stem and the first bottleneck's convolutions and BatchNorms are frozen, as the
first 15 Keras layers are. The network runs channels-last, PyTorch's fast layout on CPU and GPU.
"""
import torch
import torchvision
from pytorch_metric_learning import losses, miners
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Encoder(nn.Module):
    """0..255 RGB (B, H, W, 3) -> L2-normalised embeddings (B, embedding_dim)."""

    def __init__(self, embedding_dim=128):
        super().__init__()
        self.net = torchvision.models.resnet50(weights=None)
        self.net.fc = nn.Linear(self.net.fc.in_features, embedding_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)
        block = self.net.layer1[0]
        self.frozen = [self.net.conv1, self.net.bn1, block.conv1, block.bn1, block.conv2, block.bn2,
                       block.conv3, block.downsample[0]]
        for module in self.frozen:
            module.requires_grad_(False)

    def train(self, mode=True):
        """Frozen BatchNorms stay in inference mode, as frozen Keras BatchNorm layers do."""
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).float()  # an NCHW view with channels-last strides
        x = (x - self.mean) / self.std
        return nn.functional.normalize(self.net(x).float(), dim=-1)


def build(device, compiled):
    """The encoder on ``device`` in channels-last memory format, wrapped in torch.compile when ``compiled``."""
    encoder = Encoder().to(device, memory_format=torch.channels_last)
    return encoder, (torch.compile(encoder) if compiled else encoder)


def train_step(task, device, compiled, bfloat16):
    """A function (images, labels) -> loss doing one optimiser step of the ``task``.

    ``"merge"``: images are the concatenated anchors, positives and negatives (3B images); the loss
    is the triplet margin loss over the triplets (i, B + i, 2B + i). ``"online"``: batch-hard mining
    over the labels, then the triplet margin loss over the mined triplets.
    """
    encoder, model = build(device, compiled)
    encoder.train()
    optimizer = torch.optim.Adam([p for p in encoder.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = losses.TripletMarginLoss(margin=0.2)
    miner = miners.BatchHardMiner()

    def step(images, labels):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
            embeddings = model(images)
        if task == "merge":
            anchors = torch.arange(len(images) // 3, device=device)
            triplets = (anchors, anchors + len(anchors), anchors + 2 * len(anchors))
            loss = loss_fn(embeddings, labels, triplets)
        else:
            loss = loss_fn(embeddings, labels, miner(embeddings, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def embed_step(device, bfloat16):
    """A function images -> embeddings, in inference mode."""
    encoder, model = build(device, compiled=False)
    encoder.eval()

    @torch.inference_mode()
    def step(images):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
            return model(images)

    return step
