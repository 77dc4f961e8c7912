"""The Keras networks: the encoder, the merge and online training models, feature views, embedding
of many images, saving and loading, and data-parallel training. Builds on core."""
