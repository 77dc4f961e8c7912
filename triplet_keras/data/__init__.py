"""Labelled image datasets (folders, CIFAR-10, MNIST / Fashion-MNIST IDX, scikit-learn's digits,
rendered glyphs), synthetic domains and pseudo-classes, and the Keras data pipelines of triplet
training. Builds on core only."""
