"""The ``worker`` command line: ``main`` registers every command; each command module
(``run``, ``topics``, ``features``, ``produce``, ``tail``, ``demo``, ``models``, ``reference``)
imports the shared ``options`` and never another command.
"""
