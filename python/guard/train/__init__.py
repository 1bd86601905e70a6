"""guard.train: the training recipes (`python -m guard.train`). See __main__.py."""
