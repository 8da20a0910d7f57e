"""A shop's handler package for deploy/smoke.sh; its router is ``smoke_shop.webhooks:router``."""
