"""The Cell link over KCP/UDP with kcp-go's FEC header, for stock Go Cells (issue #13).

The same :class:`~nanocore.cluster.transport.LinkSession` as the TLS link runs on top, so the
registry, transactions and operations above do not know which wire a Cell came on. The rooms,
bottom up:

- :mod:`.fec`: kcp-go's FEC data-shard header (parity dropped on receive, never sent);
- :mod:`.framing`: JSON documents cut into ≤ mss pieces and gathered again;
- :mod:`.conversation`: one peer's KCP conversation (``siokcp``), the ``FrameWire`` of a session;
- :mod:`.endpoint`: Core's UDP port, one conversation per remote address, every cost bounded;
- :mod:`.link`: sessions on conversations, names from the handshake, kept from being taken over;
- :mod:`.dialer`: the Cell's side (our simulated Cells, tests and benchmarks).

Core holds its KCP port with the same ``services.link.CellLinkService`` as its TLS port (the
first free one of 5600-5799, once the state is loaded), composed in ``tap``.
"""
