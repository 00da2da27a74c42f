"""filterd side by side with its peers on one private Postfix (`python -m bench.peers`)."""
