"""Security parts shared by the CLI, the server and the workers: outbound target checks
(SSRF) in :mod:`tollhouse.security.net`, the audit log in :mod:`tollhouse.security.audit`."""
