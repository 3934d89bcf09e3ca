"""The worker's configuration: settings (``settings``), their validation into component
specs (``compile``) and the Markdown reference of every key (``reference``).
"""
