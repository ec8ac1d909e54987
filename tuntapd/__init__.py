"""``tuntapd``: holds a tun/tap device open so that it has carrier and pcap can
capture on it while the device's real user is down."""
