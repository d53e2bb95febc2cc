"""dnas: the command-line entry point that joins the service, the agents and the search client."""
