"""``tagi serve``: instant adapters as a service — type an instruction, get a working adapter.

One process loads the base model and the hypernetwork once. The pieces:

- :mod:`tagi.serve.cache` — server-made adapter ids (content hashes), an LRU of generated adapters
  bounded in bytes, PEFT folders as zip files;
- :mod:`tagi.serve.scheduler` — the one worker thread that owns the model; concurrent requests for
  *different* adapters decode together with a per-row adapter (continuous batching: a request joins the
  running batch at the next decode step and leaves it when it stops), and each adapter's instruction
  prefix is computed once and kept (:mod:`tagi.backbones.prefix_store`);
- :mod:`tagi.serve.service` — requests -> model work, limits, timeouts (no HTTP);
- :mod:`tagi.serve.app`, :mod:`tagi.serve.openai_api` — FastAPI routes, OpenAI request/response shapes,
  bearer token, body limit, CORS, JSON errors; :mod:`tagi.serve.metrics` — Prometheus;
- :mod:`tagi.serve.runner` — uvicorn in the foreground or a background thread; model work outside the
  worker (loading) on a thread that ends, so the worker's OpenMP pool is the process's only one;
- ``static/`` — the web page (HTML + one script + CSS, no build step, no CDN).

The command is :func:`tagi.commands.serve.serve`.
"""
