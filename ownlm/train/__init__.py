"""ownlm.train stage."""
