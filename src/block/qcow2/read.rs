//! Guest reads (QEMU's qcow2_co_preadv_part and its task): data, zero and unallocated
//! clusters, the backing file, and compressed clusters.

use super::Qcow2;
use super::aio_task::TaskPool;
use super::state::SubclusterType;
use crate::block::blkdebug::events::Event;
use crate::block::driver::IoResult;
use crate::block::io;
use crate::block::node::Node;
use std::cell::RefCell;
use std::rc::Rc;

/// What one parallel read task read: where it goes in the request's buffer, and the bytes.
type ReadPart = (usize, Vec<u8>);

impl Qcow2 {
    /// QEMU's qcow2_co_preadv_part: zero and unallocated chunks are filled in place; every
    /// other chunk is read by a task, in parallel (an AioTaskPool) when the request needs
    /// more than one chunk.
    pub async fn do_preadv(&self, node: &Node, offset: u64, buf: &mut [u8]) -> IoResult {
        self.check_alive()?;
        let mut pool: Option<Rc<TaskPool>> = None;
        // what the parallel tasks read, copied into `buf` once they are all done
        let parts: Rc<RefCell<Vec<ReadPart>>> = Rc::default();
        let mut done = 0usize;
        let mut ret = Ok(());
        while done < buf.len() && pool.as_ref().map_or(Ok(()), |p| p.status()).is_ok() {
            let want = ((buf.len() - done) as u64).min(i32::MAX as u64);
            let pos = offset + done as u64;
            self.lock.lock().await;
            let r = self.get_host_offset(node, pos, want).await;
            self.lock.unlock();
            let (n, host, ty) = match r {
                Ok(v) => v,
                Err(e) => {
                    ret = Err(e);
                    break;
                }
            };
            let reads_zero =
                ty.reads_zero() || (ty.is_unallocated() && node.child("backing").is_none());
            if reads_zero {
                buf[done..done + n as usize].fill(0);
            } else {
                if pool.is_none() && n as usize != buf.len() - done {
                    pool = Some(TaskPool::new());
                }
                match &pool {
                    None => {
                        let out = &mut buf[done..done + n as usize];
                        if let Err(e) = self.preadv_task(node, ty, host, pos, out).await {
                            ret = Err(e);
                            break;
                        }
                    }
                    Some(pool) => {
                        let (node, parts, at) = (node.rc(), parts.clone(), done);
                        pool.start(async move {
                            let q: &Qcow2 = node.driver_as().expect("a qcow2 node");
                            let mut data = vec![0u8; n as usize];
                            q.preadv_task(&node, ty, host, pos, &mut data).await?;
                            parts.borrow_mut().push((at, data));
                            Ok(())
                        })
                        .await;
                    }
                }
            }
            done += n as usize;
        }
        if let Some(pool) = pool {
            pool.wait_all().await;
            ret = ret.and(pool.status());
        }
        for (at, data) in parts.take() {
            buf[at..at + data.len()].copy_from_slice(&data);
        }
        ret
    }

    /// QEMU's qcow2_co_preadv_task: one chunk from the backing file, a compressed cluster
    /// or the image file.
    async fn preadv_task(
        &self,
        node: &Node,
        ty: SubclusterType,
        host: u64,
        pos: u64,
        out: &mut [u8],
    ) -> IoResult {
        match ty {
            SubclusterType::UnallocatedPlain | SubclusterType::UnallocatedAlloc => {
                let backing = node
                    .child("backing")
                    .expect("unallocated chunks without a backing file read as zero");
                node.file().debug_event(Event::ReadBackingAio).await;
                io::preadv(backing, pos, out).await
            }
            SubclusterType::Compressed => self.read_compressed(node, host, pos, out).await,
            _ => {
                node.file().debug_event(Event::ReadAio).await;
                io::preadv(self.data_child(node), host, out).await
            }
        }
    }

    async fn read_compressed(
        &self,
        node: &Node,
        entry: u64,
        offset: u64,
        out: &mut [u8],
    ) -> IoResult {
        let (coffset, csize, cs, codec) = {
            let st = self.st.borrow();
            let (o, s) = st.parse_compressed(entry);
            (o, s, st.cluster_size, st.compression)
        };
        let mut cbuf = vec![0u8; csize as usize];
        node.file().debug_event(Event::ReadCompressed).await;
        io::preadv(node.file(), coffset, &mut cbuf).await?;
        let mut cluster = vec![0u8; cs as usize];
        let ok = self
            .in_thread(|| codec.decompress(&cbuf, &mut cluster))
            .await;
        if !ok {
            return Err(libc::EIO);
        }
        let oic = (offset & (cs - 1)) as usize;
        out.copy_from_slice(&cluster[oic..oic + out.len()]);
        Ok(())
    }
}
