//! Guest reads (QEMU's qcow2_co_preadv_part and its task): data, zero and unallocated
//! clusters, the backing file, and compressed clusters.

use super::Qcow2;
use super::state::ClusterType;
use crate::block::blkdebug::events::Event;
use crate::block::driver::IoResult;
use crate::block::io;
use crate::block::node::Node;

impl Qcow2 {
    pub async fn do_preadv(&self, node: &Node, offset: u64, buf: &mut [u8]) -> IoResult {
        self.check_alive()?;
        let mut done = 0usize;
        while done < buf.len() {
            let want = ((buf.len() - done) as u64).min(i32::MAX as u64);
            let pos = offset + done as u64;
            self.lock.lock().await;
            let r = self.get_host_offset(node, pos, want).await;
            self.lock.unlock();
            let (n, host, ty) = r?;
            let out = &mut buf[done..done + n as usize];
            let backing = node.child("backing");
            match ty {
                ClusterType::ZeroPlain | ClusterType::ZeroAlloc => out.fill(0),
                ClusterType::Unallocated => match backing {
                    None => out.fill(0),
                    Some(b) => {
                        node.file().debug_event(Event::ReadBackingAio).await;
                        io::preadv(b, pos, out).await?;
                    }
                },
                ClusterType::Compressed => self.read_compressed(node, host, pos, out).await?,
                ClusterType::Normal => {
                    node.file().debug_event(Event::ReadAio).await;
                    io::preadv(node.file(), host, out).await?;
                }
            }
            done += n as usize;
        }
        Ok(())
    }

    async fn read_compressed(
        &self,
        node: &Node,
        entry: u64,
        offset: u64,
        out: &mut [u8],
    ) -> IoResult {
        let (coffset, csize, cs) = {
            let st = self.st.borrow();
            let (o, s) = st.parse_compressed(entry);
            (o, s, st.cluster_size)
        };
        let mut cbuf = vec![0u8; csize as usize];
        node.file().debug_event(Event::ReadCompressed).await;
        io::preadv(node.file(), coffset, &mut cbuf).await?;
        let mut cluster = vec![0u8; cs as usize];
        if !super::compress::decompress(&cbuf, &mut cluster) {
            return Err(libc::EIO);
        }
        let oic = (offset & (cs - 1)) as usize;
        out.copy_from_slice(&cluster[oic..oic + out.len()]);
        Ok(())
    }
}
