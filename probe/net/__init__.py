"""rtnetlink: the message codec, link requests (XDP), TC requests (qdiscs, filters), interfaces by name."""
