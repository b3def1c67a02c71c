"""The gateway side of Rampart: SDK, paper venue, reference gateway."""
