//! Connect: upload usage cabs to the update service and download the packs that apply (issue 4).
