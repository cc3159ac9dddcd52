"""The Modal frontend: speaks `modal.client.ModalClient` (gRPC) as the official client expects."""
