"""The answer cache: what the backend answered to a deterministic request, replayed on a repeat.

``policy.py`` says which requests qualify and what their key is; ``answers.py``
keeps the answers (LRU, bounded in entries and bytes), records a reply as it is
relayed and replays a kept one as a reply of the same kind. The pipeline
(``api/pipeline.py``) consults it at the gate: a hit never takes a backend slot.
"""
