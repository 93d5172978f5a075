"""Operator tools: the command line's sub-commands that are not roles
(`migrate`, `reconcile`, `sign`, `put-stock`, `put-cart`, `replay`,
`reprocess`, `dlq`), its parser, and their dispatch (`worker.tools.cli`)."""
