"""The web app of ``llm-dit serve`` (see :mod:`llm_dit.web.app`): generate, sweep, run experiments and
browse run folders from a browser, through the same library calls as the command line."""
