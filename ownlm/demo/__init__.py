"""The offline flywheel demo: a simulated app, its users, and a scripted stand-in for a paid API."""
