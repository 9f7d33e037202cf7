"""KnowledgeDiscovery: documentation gaps: missing docstrings, stale references,
unindexed and undocumented pages.

Pure: ``docrefs`` parses the references documents make, ``detector`` judges them."""
