"""ownlm.eval stage."""
