"""Propose: policy turns a verification into an action; a verified revert becomes a PR a person decides on."""
