"""INR tasks: datasets of SIRENs, INR classification and INR editing with neural-graph encoders."""
