"""The Cell fabric: discovery, message transport, transactions and the cell registry."""
