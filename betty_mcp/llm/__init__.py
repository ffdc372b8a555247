"""LLM access (LiteLLM adapter, router, ledger). Arrives with the llm_query issue; nothing here yet."""
