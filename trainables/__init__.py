"""trainables: data, networks, losses, training and evaluation of one trial.

Importing the package registers the papers' methods (trainables.registry) in the live method
tables of trainables.names, so every reader of those tables sees them."""

from trainables import registry  # noqa: F401  (registers the methods)
