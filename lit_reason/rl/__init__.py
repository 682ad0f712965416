"""Reinforcement-learning math below the algorithms: advantage estimation and policy-gradient losses, as
small functions (shapes in their docstrings) and loss components."""
