"""The lowest layer, used by every other: distances (numpy and keras.ops twins), the triplet losses,
offline mining and the names of strategies and transfer modes, per-class row operations, image
reading, atomic file writes and what downloads need. Imports nothing else of the package."""
