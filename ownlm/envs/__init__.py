"""ownlm.envs stage."""
