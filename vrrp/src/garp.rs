//! Gratuitous ARP: the Ethernet frame that tells a link which MAC now owns an IPv4 VIP.
//!
//! Shaped like smoltcp's `wire::arp`: [`EthernetFrame`] and [`ArpPacket`] are views over
//! bytes, [`Repr`] is the ARP message as a plain value, and [`frame`] puts them together.
//! Pure: the announcer sends the frame.
//!
//! The frame is an ARP request whose sender and target protocol addresses are both the VIP,
//! broadcast — the form keepalived sends and every host updates an existing entry from.

use std::net::Ipv4Addr;

use thiserror::Error;

use crate::wire::{read_ipv4, read_u16, write_u16};

/// Bytes in the Ethernet II header.
pub const ETHERNET_HEADER_LEN: usize = ethernet_field::PAYLOAD.start;

/// Bytes in an ARP message for Ethernet and IPv4.
pub const ARP_LEN: usize = field::TPA.end;

/// Bytes in a gratuitous ARP frame (Ethernet II header and ARP body, without padding; the
/// NIC pads to the 60-byte minimum).
pub const FRAME_LEN: usize = ETHERNET_HEADER_LEN + ARP_LEN;

/// The Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Byte offsets of the Ethernet II header.
mod ethernet_field {
    use std::ops::{Range, RangeFrom};

    pub(super) const DESTINATION: Range<usize> = 0..6;
    pub(super) const SOURCE: Range<usize> = 6..12;
    pub(super) const ETHERTYPE: Range<usize> = 12..14;
    pub(super) const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Byte offsets of an ARP message for Ethernet and IPv4 (RFC 826): the address fields are
/// where hardware length 6 and protocol length 4 put them.
mod field {
    use std::ops::Range;

    pub(super) const HTYPE: Range<usize> = 0..2;
    pub(super) const PTYPE: Range<usize> = 2..4;
    pub(super) const HLEN: usize = 4;
    pub(super) const PLEN: usize = 5;
    pub(super) const OPER: Range<usize> = 6..8;
    pub(super) const SHA: Range<usize> = 8..14;
    pub(super) const SPA: Range<usize> = 14..18;
    pub(super) const THA: Range<usize> = 18..24;
    pub(super) const TPA: Range<usize> = 24..28;
}

/// The hardware length of an Ethernet address, in ARP's HLEN field.
const ETHERNET_ADDRESS_LEN: u8 = 6;
/// The protocol length of an IPv4 address, in ARP's PLEN field.
const IPV4_ADDRESS_LEN: u8 = 4;

/// An EtherType: what an Ethernet frame carries, and which protocol ARP resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// IPv4, 0x0800.
    Ipv4,
    /// ARP, 0x0806.
    Arp,
    /// IPv6, 0x86dd.
    Ipv6,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => Self::Ipv4,
            0x0806 => Self::Arp,
            0x86dd => Self::Ipv6,
            other => Self::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(ethertype: EtherType) -> Self {
        match ethertype {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

/// ARP's hardware type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hardware {
    /// Ethernet, 1.
    Ethernet,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for Hardware {
    fn from(value: u16) -> Self {
        match value {
            1 => Self::Ethernet,
            other => Self::Unknown(other),
        }
    }
}

impl From<Hardware> for u16 {
    fn from(hardware: Hardware) -> Self {
        match hardware {
            Hardware::Ethernet => 1,
            Hardware::Unknown(other) => other,
        }
    }
}

/// ARP's operation field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A request, 1: what a gratuitous ARP is.
    Request,
    /// A reply, 2.
    Reply,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(value: u16) -> Self {
        match value {
            1 => Self::Request,
            2 => Self::Reply,
            other => Self::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(operation: Operation) -> Self {
        match operation {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(other) => other,
        }
    }
}

/// Why bytes could not be read as an Ethernet frame or an ARP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ArpError {
    /// The buffer is shorter than the Ethernet header, or than an Ethernet/IPv4 ARP message.
    #[error("buffer shorter than the Ethernet header or ARP message it should hold")]
    Truncated,
    /// The message resolves something other than IPv4 addresses to Ethernet ones.
    #[error("ARP message is not for Ethernet and IPv4")]
    NotEthernetIpv4,
}

/// A read/write view over an Ethernet II frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking its length; accessors panic if it is shorter than the
    /// header.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that holds at least the header, so that no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Self, ArpError> {
        if buffer.as_ref().len() < ETHERNET_HEADER_LEN {
            return Err(ArpError::Truncated);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// The destination MAC address.
    pub fn dst_addr(&self) -> [u8; 6] {
        read_mac(self.buffer.as_ref(), ethernet_field::DESTINATION)
    }

    /// The source MAC address.
    pub fn src_addr(&self) -> [u8; 6] {
        read_mac(self.buffer.as_ref(), ethernet_field::SOURCE)
    }

    /// The EtherType field.
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), ethernet_field::ETHERTYPE.start))
    }

    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[ethernet_field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst_addr(&mut self, address: [u8; 6]) {
        self.buffer.as_mut()[ethernet_field::DESTINATION].copy_from_slice(&address);
    }

    /// Sets the source MAC address.
    pub fn set_src_addr(&mut self, address: [u8; 6]) {
        self.buffer.as_mut()[ethernet_field::SOURCE].copy_from_slice(&address);
    }

    /// Sets the EtherType field.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(self.buffer.as_mut(), ethernet_field::ETHERTYPE.start, ethertype.into());
    }

    /// The bytes after the header, to write the payload into.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[ethernet_field::PAYLOAD]
    }
}

/// A read/write view over an ARP message for Ethernet and IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps a buffer without checking its length; accessors panic if it is shorter than
    /// [`ARP_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`ArpPacket::check_len`], so that no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Self, ArpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole Ethernet/IPv4 ARP message (bytes after it, such
    /// as the padding of a short frame, are allowed).
    pub fn check_len(&self) -> Result<(), ArpError> {
        if self.buffer.as_ref().len() < ARP_LEN { Err(ArpError::Truncated) } else { Ok(()) }
    }

    /// The hardware type field.
    pub fn hardware_type(&self) -> Hardware {
        Hardware::from(read_u16(self.buffer.as_ref(), field::HTYPE.start))
    }

    /// The protocol type field.
    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::PTYPE.start))
    }

    /// The hardware address length field.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// The protocol address length field.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// The operation field.
    pub fn operation(&self) -> Operation {
        Operation::from(read_u16(self.buffer.as_ref(), field::OPER.start))
    }

    /// The sender hardware address.
    pub fn source_hardware_addr(&self) -> [u8; 6] {
        read_mac(self.buffer.as_ref(), field::SHA)
    }

    /// The sender protocol address.
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SPA.start)
    }

    /// The target hardware address.
    pub fn target_hardware_addr(&self) -> [u8; 6] {
        read_mac(self.buffer.as_ref(), field::THA)
    }

    /// The target protocol address.
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::TPA.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the hardware type field.
    pub fn set_hardware_type(&mut self, hardware: Hardware) {
        write_u16(self.buffer.as_mut(), field::HTYPE.start, hardware.into());
    }

    /// Sets the protocol type field.
    pub fn set_protocol_type(&mut self, protocol: EtherType) {
        write_u16(self.buffer.as_mut(), field::PTYPE.start, protocol.into());
    }

    /// Sets the hardware address length field.
    pub fn set_hardware_len(&mut self, len: u8) {
        self.buffer.as_mut()[field::HLEN] = len;
    }

    /// Sets the protocol address length field.
    pub fn set_protocol_len(&mut self, len: u8) {
        self.buffer.as_mut()[field::PLEN] = len;
    }

    /// Sets the operation field.
    pub fn set_operation(&mut self, operation: Operation) {
        write_u16(self.buffer.as_mut(), field::OPER.start, operation.into());
    }

    /// Sets the sender hardware address.
    pub fn set_source_hardware_addr(&mut self, address: [u8; 6]) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&address);
    }

    /// Sets the sender protocol address.
    pub fn set_source_protocol_addr(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&address.octets());
    }

    /// Sets the target hardware address.
    pub fn set_target_hardware_addr(&mut self, address: [u8; 6]) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&address);
    }

    /// Sets the target protocol address.
    pub fn set_target_protocol_addr(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&address.octets());
    }
}

/// An ARP message for Ethernet and IPv4, as a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Request or reply.
    pub operation: Operation,
    /// The sender's MAC address.
    pub source_hardware_addr: [u8; 6],
    /// The sender's IPv4 address.
    pub source_protocol_addr: Ipv4Addr,
    /// The target's MAC address (zero in a request).
    pub target_hardware_addr: [u8; 6],
    /// The target's IPv4 address.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// The gratuitous ARP request announcing that `mac` owns `vip`: sender and target
    /// protocol addresses are both the VIP, the target hardware address is zero.
    pub fn gratuitous(mac: [u8; 6], vip: Ipv4Addr) -> Self {
        Self {
            operation: Operation::Request,
            source_hardware_addr: mac,
            source_protocol_addr: vip,
            target_hardware_addr: [0; 6],
            target_protocol_addr: vip,
        }
    }

    /// Reads an ARP message, checking its length (again, for packets made with
    /// [`ArpPacket::new_unchecked`]) and that it is for Ethernet and IPv4.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self, ArpError> {
        packet.check_len()?;
        let ethernet_ipv4 = packet.hardware_type() == Hardware::Ethernet
            && packet.protocol_type() == EtherType::Ipv4
            && packet.hardware_len() == ETHERNET_ADDRESS_LEN
            && packet.protocol_len() == IPV4_ADDRESS_LEN;
        if !ethernet_ipv4 {
            return Err(ArpError::NotEthernetIpv4);
        }
        Ok(Self {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// The length of the message [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        ARP_LEN
    }

    /// Writes the message into the first [`Repr::buffer_len`] bytes of `packet`, which panics
    /// if the buffer is shorter.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(Hardware::Ethernet);
        packet.set_protocol_type(EtherType::Ipv4);
        packet.set_hardware_len(ETHERNET_ADDRESS_LEN);
        packet.set_protocol_len(IPV4_ADDRESS_LEN);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

/// The gratuitous ARP frame announcing that `mac` owns `vip`: [`Repr::gratuitous`] in a
/// broadcast Ethernet frame from `mac`.
pub fn frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut bytes = [0u8; FRAME_LEN];
    let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
    frame.set_dst_addr(BROADCAST);
    frame.set_src_addr(mac);
    frame.set_ethertype(EtherType::Arp);
    Repr::gratuitous(mac, vip).emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    bytes
}

fn read_mac(bytes: &[u8], field: std::ops::Range<usize>) -> [u8; 6] {
    let mut address = [0; 6];
    address.copy_from_slice(&bytes[field]);
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x01, 0x33];
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

    /// The gratuitous ARP frame for 198.18.0.100 from 02:00:5e:00:01:33.
    #[rustfmt::skip]
    static FRAME_BYTES: [u8; FRAME_LEN] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
        0x02, 0x00, 0x5e, 0x00, 0x01, 0x33, // source
        0x08, 0x06,                         // EtherType ARP
        0x00, 0x01,                         // hardware Ethernet
        0x08, 0x00,                         // protocol IPv4
        0x06, 0x04,                         // address lengths
        0x00, 0x01,                         // request
        0x02, 0x00, 0x5e, 0x00, 0x01, 0x33, // sender MAC
        198, 18, 0, 100,                    // sender IP: the VIP
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target MAC: zero
        198, 18, 0, 100,                    // target IP: the VIP
    ];

    #[test]
    fn deconstruct() {
        let frame = EthernetFrame::new_checked(&FRAME_BYTES[..]).unwrap();
        assert_eq!(frame.dst_addr(), BROADCAST);
        assert_eq!(frame.src_addr(), MAC);
        assert_eq!(frame.ethertype(), EtherType::Arp);
        let packet = ArpPacket::new_checked(frame.payload()).unwrap();
        assert_eq!(packet.hardware_type(), Hardware::Ethernet);
        assert_eq!(packet.protocol_type(), EtherType::Ipv4);
        assert_eq!(packet.hardware_len(), 6);
        assert_eq!(packet.protocol_len(), 4);
        assert_eq!(packet.operation(), Operation::Request);
        assert_eq!(packet.source_hardware_addr(), MAC);
        assert_eq!(packet.source_protocol_addr(), VIP);
        assert_eq!(packet.target_hardware_addr(), [0; 6]);
        assert_eq!(packet.target_protocol_addr(), VIP);
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5; FRAME_LEN];
        let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
        frame.set_dst_addr(BROADCAST);
        frame.set_src_addr(MAC);
        frame.set_ethertype(EtherType::Arp);
        let mut packet = ArpPacket::new_unchecked(frame.payload_mut());
        packet.set_hardware_type(Hardware::Ethernet);
        packet.set_protocol_type(EtherType::Ipv4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(Operation::Request);
        packet.set_source_hardware_addr(MAC);
        packet.set_source_protocol_addr(VIP);
        packet.set_target_hardware_addr([0; 6]);
        packet.set_target_protocol_addr(VIP);
        assert_eq!(bytes, FRAME_BYTES);
    }

    #[test]
    fn parse() {
        let frame = EthernetFrame::new_checked(&FRAME_BYTES[..]).unwrap();
        let packet = ArpPacket::new_checked(frame.payload()).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap(), Repr::gratuitous(MAC, VIP));
    }

    #[test]
    fn emit() {
        let repr = Repr::gratuitous(MAC, VIP);
        let mut bytes = vec![0xa5; repr.buffer_len()];
        repr.emit(&mut ArpPacket::new_unchecked(&mut bytes));
        assert_eq!(bytes, FRAME_BYTES[ETHERNET_HEADER_LEN..]);
        assert_eq!(frame(MAC, VIP), FRAME_BYTES);
    }

    #[test]
    fn parse_rejects_a_truncated_buffer() {
        let arp = &FRAME_BYTES[ETHERNET_HEADER_LEN..FRAME_LEN - 1];
        assert_eq!(ArpPacket::new_checked(arp).unwrap_err(), ArpError::Truncated);
        assert_eq!(Repr::parse(&ArpPacket::new_unchecked(arp)).unwrap_err(), ArpError::Truncated);
        let header = &FRAME_BYTES[..ETHERNET_HEADER_LEN - 1];
        assert_eq!(EthernetFrame::new_checked(header).unwrap_err(), ArpError::Truncated);
    }

    /// What `frame` sent before the wire types existed, for another MAC and VIP: the bytes on
    /// the link must not change.
    #[test]
    fn frame_bytes_are_what_the_old_builder_sent() {
        #[rustfmt::skip]
        let sent_before: [u8; FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
            0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 0x0a, 0xc9, 0x07, 0xfe,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xc9, 0x07, 0xfe,
        ];
        let mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
        assert_eq!(frame(mac, Ipv4Addr::new(10, 201, 7, 254)), sent_before);
    }
}
