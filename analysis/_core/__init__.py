"""The floor every analysis package stands on: the error root, validators, model modes, atomic io, numerics
and the Result protocol. Imports nothing from the rest of ``analysis``."""
