"""The error of the data layer, apart so that every dataset reader can raise it without importing the others."""


class DatasetError(ValueError):
    """A dataset cannot be loaded as asked; the message names the folder or file at fault."""
