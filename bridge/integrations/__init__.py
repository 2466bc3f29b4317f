"""Ways in for agent frameworks (optional extras: ``pip install hitl-bridge[langchain]``)."""
