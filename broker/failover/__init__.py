"""Failover by replication: roles, epochs, promotion and the witness.

- `epoch.py`: the node's durable epoch (one small file beside the store).
- `witness.py`: the data-less third vote (`moorage witness --port N`) and its
  rules, as a pure state machine plus a thin server.
- `node.py`: a node's role state machine inside the daemon: serve as primary
  (ship batches, report to the witness, decide when to confirm alone),
  follow as standby (refuse clients, apply batches, ask for promotion), and
  switch between the two without restarting the process.
- `port.py`: the replication port every node listens on (standbys' HELLOs,
  the operator's and the peer's questions).

The bytes on the wire and the batch shipping live in
`moorage.storage.replication`; docs/failover.md describes the whole.
"""
