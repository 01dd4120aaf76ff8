"""Orchestration: the agent processes the supervisor runs and what each role serves."""
