"""LLM access: settings (the ``llm_router`` block), models, routing (pure), the fallback walk
(service), backends (the LiteLLM adapter, the only module importing litellm; the embedded model)
and the usage ledger with budgets.

    service = LlmService(settings.router, open_store(settings))
    result = await service.chat(ChatRequest(messages), RouteRequest(prompt=...), caller="llm_query")
"""
