"""Pieces of the hands-on commands, taking plain arguments: item sources (``sources``),
sending events (``sender``), loading feature hashes (``loader``), what the demo shows of the
predictions (``scoreboard``), local broker and Redis processes (``local``) and progress lines on a
terminal (``console``).
"""
