"""Moorage, a persistent message broker: the one namespace every part installs under.

The repository keeps its top-level folders (`broker/`, `protocols/`,
`storage/`, `bench/`); this package reaches them through relative symbolic
links, so they install and import as `moorage.broker`, `moorage.protocols`,
`moorage.storage` and `moorage.bench`, and nothing generic lands on a user's
`sys.path`. (Why links rather than setuptools' `package-dir` mapping: the
README's development notes.)
"""

__version__ = "0.1.0"
