"""Training the model family on a synthetic task where memory matters, and measuring each serve
mode's quality on it."""
