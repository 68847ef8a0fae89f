"""The library of the Client-Dispatcher-Server pattern, runnable.

A library has its headquarters and one thematic department in one place; the other
departments are elsewhere. Each department keeps its own records and serves them. A
reader at the headquarters searches every department without knowing where any of
them is: the dispatchers know.

Two federated dispatchers stand for the two places. Departments register as servers
of the service ``library/dept/TOPIC`` with their local dispatcher; the reader asks its
own dispatcher, which asks the other one for what it does not hold.

    python examples/library.py
"""
from __future__ import annotations

import posa

RECORDS = {
    "science": {"Design Patterns": "S-12", "Pattern-Oriented Software Architecture": "S-40"},
    "history": {"The Mythical Man-Month": "H-3"},
    "arts": {"A Pattern Language": "A-77"},
}


def department(topic: str) -> object:
    """A department's server: it answers searches in its own records."""
    records = RECORDS[topic]

    def search(body: dict) -> dict:
        found = {title: shelf for title, shelf in records.items()
                 if body["q"].lower() in title.lower()}
        return {"department": topic, "found": found}
    return search


def main() -> dict:
    with posa.Dispatcher("tcp://127.0.0.1:0", node="hq") as hq:
        with posa.Dispatcher("tcp://127.0.0.1:0", node="branch",
                             peers=[hq.addresses[0]]) as branch:
            hq_registry = posa.RegistryClient(hq.addresses[0])
            branch_registry = posa.RegistryClient(branch.addresses[0])
            servers = [
                posa.Server("library/dept/science", department("science"),
                            registry=hq_registry, listen="tcp://127.0.0.1:0"),
                posa.Server("library/dept/history", department("history"),
                            registry=branch_registry, listen="zmq+tcp://127.0.0.1:0"),
                posa.Server("library/dept/arts", department("arts"),
                            registry=branch_registry, listen="tcp://127.0.0.1:0"),
            ]
            try:
                hq.connect_peer(branch.addresses[0])   # federate both ways
                with posa.Client(registry=hq_registry) as reader:
                    results = {}
                    for topic in RECORDS:
                        reply = reader.call(f"library/dept/{topic}", {"q": "pattern"},
                                            timeout=5.0)
                        results[topic] = reply["found"]
                        print(f"{topic:8} {reply['found']}")
                    return results
            finally:
                for server in servers:
                    server.close()
                hq_registry.close()
                branch_registry.close()


if __name__ == "__main__":
    main()
