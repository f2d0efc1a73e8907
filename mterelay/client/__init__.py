"""The Twisted relay client: validate, pair, seal, open, re-pair and retry.

``RelayClient`` is what a Python program (and the outbound relay role) uses
to talk to an inbound mterelay; ``mterelay-client`` (:mod:`mterelay.cli`) is
its curl-like command line.  The package is cut by concern:

* :mod:`~mterelay.client.messages` - sealing a request, opening a response (pure);
* :mod:`~mterelay.client.pool` - client id and pair pool, recovery rules (pure);
* :mod:`~mterelay.client.bodies` - streaming bodies through the sealer/opener;
* :mod:`~mterelay.client.response` - the IResponse handed to the caller;
* :mod:`~mterelay.client.relay` - ``RelayClient`` itself (the I/O).
"""

from mterelay.client.errors import NotARelay, PairingFailed
from mterelay.client.messages import SealOptions
from mterelay.client.relay import RelayClient
from mterelay.client.response import RelayResponse

__all__ = ["RelayClient", "RelayResponse", "SealOptions", "NotARelay", "PairingFailed"]
