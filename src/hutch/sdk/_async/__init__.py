"""The async SDK: the source the sync SDK is generated from."""
