"""The lab: a simulator of many controller cores, network namespaces with real parts, the
topologies of the demo, tests and benches, and the demo itself. Not part of the service: it
installs as its own distribution (``wg-netmanager-lab``, from ``lab/``), for developers and CI."""
