"""Deployment across institutions on Flower's runtime: the bank side (:mod:`.client`), the
server side (:mod:`.server`), the Flower apps (:mod:`.app`) and an in-process link
(:mod:`.local`). See docs/deployment.md."""
