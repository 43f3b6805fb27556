"""rtnetlink: the message codec, link requests and events, TC requests (qdiscs, filters), interfaces by name."""
