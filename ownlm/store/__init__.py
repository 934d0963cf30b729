"""ownlm.store stage."""
