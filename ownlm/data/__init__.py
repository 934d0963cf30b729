"""ownlm.data stage."""
