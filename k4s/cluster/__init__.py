"""The cluster on one node: its facts (node), the service graph (services) run
by the supervisor, one module per upstream component (components/), the tasks
beside them, PKI (certs: the names; pki: the issuing), the API client and the
bootstrap objects (addons). Runs on the appliance and on a host (`k4s server`)."""
