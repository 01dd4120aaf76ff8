"""What the agents do, apart from the wire: plan parsing and validation, task ordering and
context tracking, context budgets and skills, execution prompts and the executor's tool loop
in a per-plan workspace, and review gates.

The modules here know nothing of the protocol; `mnemosyne.orchestration.agents.methods` turns
requests into calls to them and their results and errors into responses.
"""
