from twisted.application.service import ServiceMaker

mterelay = ServiceMaker(
    "mterelay",
    "mterelay.service.tap",
    "End-to-end payload-encryption relay for HTTP (post-quantum hybrid pairing).",
    "mterelay",
)
